//! `cargo xtask lint`: rustfmt and clippy with warnings denied, for the host
//! crates and, separately, the eBPF crate (nightly, BPF target).

use anyhow::{Result, bail};

use crate::util::{self, Step};

/// The lints, in order.
const LINTS: &[Step] = &[
    ("rustfmt", fmt),
    ("clippy (host crates)", clippy_host),
    ("clippy (eBPF crate)", clippy_ebpf),
];

/// Runs every lint, even after one fails, then reports which failed.
pub fn run() -> Result<()> {
    let mut failed = Vec::new();
    for &(name, lint) in LINTS {
        if let Err(e) = lint() {
            eprintln!("lint: {name} FAILED: {e:#}");
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    eprintln!("lint: all clean");
    Ok(())
}

/// `cargo fmt --all -- --check` (covers the eBPF crate too).
pub fn fmt() -> Result<()> {
    util::run(util::cargo().args(["fmt", "--all", "--", "--check"]))
}

/// Clippy on the host crates: every member but the eBPF crate, which only
/// builds for the BPF target.
pub fn clippy_host() -> Result<()> {
    util::run(util::cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "hostscope-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

/// Clippy on the eBPF crate with the nightly toolchain for the BPF target, the
/// way aya-build compiles it.
pub fn clippy_ebpf() -> Result<()> {
    util::run(
        util::nightly_cargo()
            .current_dir(util::workspace_root().join("agent-ebpf"))
            .args([
                "clippy",
                "-Z",
                "build-std=core",
                "--target",
                "bpfel-unknown-none",
                "--release",
                "--",
                "-D",
                "warnings",
            ]),
    )
}
