//! `cargo xtask build [--release]`: setup, then build the agent (with its
//! embedded eBPF programs) and the test binaries.

use anyhow::Result;
use clap::Args;

use crate::{setup, util};

/// Options of `cargo xtask build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

/// Runs setup, then the build.
pub fn run(args: &BuildArgs) -> Result<()> {
    setup::run()?;
    build(args.release)
}

/// `cargo build -p hostscope -p hostscope-tests [--release]`.
pub fn build(release: bool) -> Result<()> {
    let mut cmd = util::cargo();
    cmd.args(["build", "-p", "hostscope", "-p", "hostscope-tests"]);
    if release {
        cmd.arg("--release");
    }
    util::run(&mut cmd)
}
