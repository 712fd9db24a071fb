//! The `creditd` binary: command line, configuration and wiring.
//!
//! No business rule lives here: [`config`] turns the layers of
//! configuration into validated core types, [`serve`] wires a store, a clock
//! and the API together, and [`commands`] holds the one-shot commands.

pub mod cli;
pub mod commands;
pub mod config;
pub mod export;
pub mod models;
pub mod net;
pub mod proxy_keys;
pub mod serve;
pub mod tokens;

use std::fmt;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, KeysCommand, ModelsCommand};

/// Why a command stopped, and with which exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad configuration, arguments or an unsupported database: exit 2.
    Usage(String),
    /// Something failed while running: exit 1.
    Runtime(String),
    /// `creditd audit` found breaches (already printed): exit 1.
    Breaches(usize),
}

impl Failure {
    pub fn usage(message: impl fmt::Display) -> Self {
        Failure::Usage(message.to_string())
    }

    pub fn runtime(message: impl fmt::Display) -> Self {
        Failure::Runtime(message.to_string())
    }

    fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Usage(_) => ExitCode::from(2),
            Failure::Runtime(_) | Failure::Breaches(_) => ExitCode::from(1),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(m) | Failure::Runtime(m) => f.write_str(m),
            Failure::Breaches(n) => write!(f, "the audit found {}", commands::counted(*n, "breach", "breaches")),
        }
    }
}

impl From<config::ConfigError> for Failure {
    fn from(e: config::ConfigError) -> Self {
        Failure::Usage(e.0)
    }
}

/// Runs the command line and returns the process's exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Serve(_)));
    let outcome = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(async move {
            match cli.command {
                Command::Serve(args) => serve::serve(args).await,
                Command::Init(args) => commands::init(&args),
                Command::Migrate(args) => commands::migrate(&args).await,
                Command::Audit(args) => commands::audit(&args).await,
                Command::Export(args) => export::export(&args).await,
                Command::Keys { command: KeysCommand::Create(args) } => commands::create_key(&args).await,
                Command::Keys { command: KeysCommand::List(args) } => commands::list_keys(&args).await,
                Command::Keys { command: KeysCommand::Revoke(args) } => commands::revoke_key(&args).await,
                Command::Tokens { command } => tokens::run(&command).await,
                Command::ProxyKeys { command } => proxy_keys::run(&command).await,
                Command::Models { command: ModelsCommand::Import(args) } => models::import(&args).await,
            }
        }),
        Err(e) => Err(Failure::runtime(format!("cannot start the async runtime: {e}"))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !matches!(failure, Failure::Breaches(_)) {
                eprintln!("creditd: {failure}");
            }
            failure.exit_code()
        }
    }
}

/// Logs go to stderr, filtered by `CREDITD_LOG` (default `info` for
/// `serve`, `warn` for the one-shot commands). Secrets are never logged.
fn init_logging(serving: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if serving { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("CREDITD_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}
