//! `aether-load`: drives one or more hub instances over real sockets and
//! reports what it measured. Each scenario prints a progress line every
//! second, a human summary, and one JSON object as its last line.
//!
//! Scenarios live one per module; this file only parses the command line.

mod churn;
mod client;
mod connect;
mod fanout;
mod rtt;
mod stats;

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
    /// Pairs ping-ponging direct messages: round trips/s and RTT.
    Rtt(rtt::Args),
    /// Subscribers leaving and rejoining beside a stable set that must
    /// lose nothing.
    Churn(churn::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    aether_hub::fdlimit::raise();
    let result = match cli.scenario {
        Scenario::Connect(args) => connect::run(args).await,
        Scenario::Fanout(args) => fanout::run(args).await,
        Scenario::Rtt(args) => rtt::run(args).await,
        Scenario::Churn(args) => churn::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aether-load: {e}");
            ExitCode::FAILURE
        }
    }
}
