//! `cargo xtask test`: the command README and CI run. Setup, lint, debug
//! build, unit tests, the container image and the systemd tarball, the
//! privileged integration tests against the built agent (and those two), then the agent on other kernels (`cargo xtask kernels`). Steps run in order and the first failure stops the run.

use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::{
    build_cmd, lint, setup,
    util::{self, Step},
};

/// The steps, in order.
const STEPS: &[Step] = &[
    ("setup", setup::run),
    ("lint: rustfmt", lint::fmt),
    ("lint: clippy (host crates)", lint::clippy_host),
    ("lint: clippy (eBPF crate)", lint::clippy_ebpf),
    ("build (debug)", || build_cmd::build(false)),
    ("unit tests", unit_tests),
    // The deploy tests among the integration tests check what this builds.
    (
        "image and package (static release binary)",
        crate::deploy::image_and_package,
    ),
    ("privileged integration tests", integration_tests),
    ("other kernels under qemu", crate::kernels::run),
];

/// Runs every step, printing each as it starts with the elapsed time.
pub fn run() -> Result<()> {
    util::require_root("cargo xtask test")?;
    let start = Instant::now();
    for (i, (name, step)) in STEPS.iter().enumerate() {
        eprintln!(
            "\n==> [{:>6.1}s] step {}/{}: {name}",
            start.elapsed().as_secs_f64(),
            i + 1,
            STEPS.len()
        );
        if let Err(e) = step() {
            eprintln!(
                "\n==> [{:>6.1}s] FAILED at step `{name}`",
                start.elapsed().as_secs_f64()
            );
            return Err(e.context(format!("cargo xtask test: step `{name}` failed")));
        }
    }
    eprintln!(
        "\n==> [{:>6.1}s] all {} steps passed",
        start.elapsed().as_secs_f64(),
        STEPS.len()
    );
    Ok(())
}

/// Unit tests of the host crates. Packages are named explicitly: the eBPF
/// crate must not be built for the host, and `hostscope-tests` runs next.
fn unit_tests() -> Result<()> {
    util::run(util::cargo().args([
        "test",
        "-p",
        "hostscope",
        "-p",
        "hostscope-common",
        "-p",
        "xtask",
    ]))
}

/// The end-to-end tests in `tests/`: they load the agent's programs, so they
/// run one at a time against the debug build named by `HOSTSCOPE_BIN`.
fn integration_tests() -> Result<()> {
    let bin = util::built_binary("debug", "hostscope");
    if !bin.is_file() {
        bail!("{} is missing after the build step", bin.display());
    }
    let bin = bin
        .canonicalize()
        .with_context(|| format!("resolving {}", bin.display()))?;
    util::run(
        util::cargo()
            .args(["test", "-p", "hostscope-tests", "--", "--test-threads=1"])
            .env("HOSTSCOPE_BIN", bin),
    )
}
