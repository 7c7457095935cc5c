//! The `aether-hub` binary: read the configuration, start the server,
//! reload the TLS certificate on SIGHUP, and shut down gracefully on
//! SIGTERM or SIGINT. `aether-hub token …` signs a development token
//! instead.

use std::io::IsTerminal;
use std::process::ExitCode;

use aether_hub::auth::issue::TokenCommand;
use aether_hub::config::LogFormat;
use aether_hub::{Config, Server};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("token") {
        return sign_token();
    }
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(serve()),
        Err(e) => {
            eprintln!("aether-hub: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `aether-hub token …`: prints a development token.
fn sign_token() -> ExitCode {
    use clap::Parser;
    let command = TokenCommand::parse_from(std::env::args().skip(1));
    match command.run() {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("aether-hub token: {e}");
            ExitCode::from(2)
        }
    }
}

async fn serve() -> ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("aether-hub: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(&config) {
        eprintln!("aether-hub: {e}");
        return ExitCode::from(2);
    }
    if let Some(limit) = aether_hub::fdlimit::raise() {
        tracing::debug!(limit, "open-file limit raised");
    }

    let grace = config.shutdown_grace;
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = wait_for_stop(&server).await {
        tracing::error!("cannot listen for signals: {e}");
        return ExitCode::FAILURE;
    }
    tracing::info!("shutting down: closing every socket with 1001");
    if server.shut_down(grace).await {
        tracing::info!("shut down cleanly");
    } else {
        tracing::warn!("grace period over with sockets still open");
    }
    ExitCode::SUCCESS
}

/// Logs go to stderr, as text or as one JSON object a line.
fn init_logging(config: &Config) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(&config.log).map_err(|e| format!("AETHER_LOG {:?}: {e}", config.log))?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    Ok(())
}

/// Until SIGTERM or SIGINT; SIGHUP reloads the TLS certificate meanwhile.
async fn wait_for_stop(server: &Server) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => match server.reload_tls() {
                Ok(true) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
                Ok(false) => tracing::info!("SIGHUP: no TLS configured, nothing to reload"),
                Err(e) => tracing::warn!("SIGHUP: keeping the current TLS certificate: {e}"),
            },
        }
    }
}
