//! `hostscope`: eBPF host observability agent exporting OTLP.

mod agent;
mod btf;
mod budget;
mod cli;
mod config;
mod config_file;
mod container;
mod ebpf;
mod export;
mod filter;
mod health;
mod identity;
mod k8s;
mod otlp;
mod privilege;
mod signals;

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Usage errors exit with 2; --help and --version with 0.
        Err(e) => e.exit(),
    };
    // File capabilities (the container image) arrive permitted only.
    privilege::raise_permitted();
    init_logging();
    // One TLS crypto provider for the process (OTLP over https, both
    // protocols); reqwest without its bundled provider requires this.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run(args) => {
            let env = |name: &str| std::env::var(name).ok();
            let again = args.clone();
            let cfg = match args.into_config(&env) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            // SIGHUP builds it again from the same flags, file and
            // environment.
            let reload: agent::Reload = Box::new(move || {
                let env = |name: &str| std::env::var(name).ok();
                again.clone().into_config(&env)
            });
            runtime.block_on(async { agent::Agent::start(cfg)?.with_reload(reload).run().await })
        }
        Command::BenchFloor { duration, hooks } => {
            runtime.block_on(agent::bench_floor(duration, hooks))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (stdout carries data). `RUST_LOG` overrides the default
/// `info`; the exporter's transport crates are kept quiet so the agent never
/// reports on its own exports in a loop.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,hyper=warn,tonic=warn,tower=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
