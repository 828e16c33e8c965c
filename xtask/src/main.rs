//! `cargo xtask`: the developer and CI entry point for hostscope.
//!
//! Every subcommand lives in its own module; shared process helpers are in
//! [`util`]. `cargo xtask test` is the command README and CI run.

mod bench;
mod bench_sched;
mod bench_series;
mod bench_tcp;
mod build_cmd;
mod deploy;
mod kernels;
mod lint;
mod run;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Developer tasks for the hostscope workspace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing needs (idempotent): nightly rust-src,
    /// bpf-linker, Debian packages.
    Setup,
    /// Set up, then build the agent and the test binaries.
    Build(build_cmd::BuildArgs),
    /// Set up, build release and run the agent with the stdout exporter.
    Run(run::RunArgs),
    /// Set up, then rustfmt and clippy (host crates and the eBPF crate).
    Lint,
    /// Set up, lint, build, unit tests, then the privileged integration tests.
    Test,
    /// Boot other kernels (Debian 6.1, 6.1 PREEMPT_RT) under qemu and check
    /// the agent loads, attaches and counts exactly there.
    Kernels,
    /// Set up, build the static (musl) release binary and the container image
    /// `localhost/hostscope:<version>` (and `:latest`) with podman.
    Image,
    /// Set up, build the static (musl) release binary and
    /// `target/package/hostscope-<version>-x86_64-linux.tar.gz` (binary,
    /// systemd unit, default config, env example, install.sh).
    Package,
    /// Syscall-overhead benchmark: hostscope against no tracer, empty
    /// programs and `syscount -L`.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Printed by hand: returning the error from main would add a
            // backtrace whenever RUST_BACKTRACE is set.
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Runs one subcommand.
fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Setup => setup::run(),
        Command::Build(args) => build_cmd::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Lint => {
            setup::run()?;
            lint::run()
        }
        Command::Test => test::run(),
        Command::Bench(args) => bench::run(&args),
        Command::Image => deploy::image(),
        Command::Package => deploy::package(),
        Command::Kernels => {
            setup::run()?;
            build_cmd::build(false)?;
            kernels::run()
        }
    }
}
