//! `cargo xtask setup`: takes a fresh Debian 12 machine with rustup (stable and
//! nightly toolchains) to one that builds and tests everything. Idempotent:
//! when everything is present it only checks, and prints one line per item.

use std::{
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, output};

/// The bpf-linker release the build uses; it must be linked against the same
/// LLVM major version as the nightly toolchain that compiles the eBPF crate.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests and the benchmark use: `syscount -L` (the
/// reference peer in `cargo xtask bench`) and `bpftool`.
const DEBIAN_PACKAGES: &[&str] = &[
    "libbpf-tools",
    "bpftool",
    // `cargo xtask kernels`: boot other kernels with the agent in an initramfs.
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    // The export tests make a throwaway CA and certificates.
    "openssl",
    // A real Prometheus server (and promtool) scrapes the Prometheus endpoint.
    "prometheus",
    // The TCP tests: network namespaces and veth (ip), random loss (nft).
    "iproute2",
    "nftables",
    // `cargo xtask image` and the deploy tests: podman builds and runs the
    // image with runc (crun refuses this kind of host's hybrid cgroups);
    // setcap gives the image's binary its file capabilities; the image
    // carries the CA bundle.
    "podman",
    "runc",
    "libcap2-bin",
    "ca-certificates",
    // ring's C code for the static x86_64-unknown-linux-musl binary.
    "musl-tools",
    // The deploy tests: install.sh is shellcheck-clean, the unit passes
    // `systemd-analyze verify`, kubernetes-validate runs in a venv.
    "shellcheck",
    "systemd",
    "python3-venv",
];

/// The Rust target of the shipped (static) binary.
const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// PyPI's kubernetes-validate (it bundles the API schemas, so validating
/// needs no network), installed in a venv under the target directory.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// The venv holding kubernetes-validate: `<target>/deploy-venv`; the deploy
/// tests run `<venv>/bin/kubernetes-validate`.
pub fn deploy_venv() -> PathBuf {
    util::target_dir().join("deploy-venv")
}

/// Runs every setup step in order.
pub fn run() -> Result<()> {
    warn_if_not_root();
    ensure_rust_src().context("setup: nightly rust-src")?;
    ensure_bpf_linker().context("setup: bpf-linker")?;
    ensure_debian_packages().context("setup: Debian packages")?;
    ensure_tracefs().context("setup: tracefs")?;
    ensure_musl_target().context("setup: musl target")?;
    ensure_kubectl().context("setup: kubectl")?;
    ensure_kubernetes_validate().context("setup: kubernetes-validate")?;
    Ok(())
}

/// Prints one setup line (to stderr: `cargo xtask run` keeps stdout for the agent's data).
fn report(item: &str, status: &str) {
    eprintln!("setup: {item:<26} {status}");
}

/// Tests, `run` and `bench` load eBPF programs, which needs root.
fn warn_if_not_root() {
    if !util::is_root() {
        report(
            "root",
            "WARNING: not root; `test`, `run` and `bench` need root (sudo -E)",
        );
    }
}

/// rust-src for the nightly toolchain (`-Z build-std=core` for the eBPF target).
fn ensure_rust_src() -> Result<()> {
    ensure_nightly_installed()?;
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if installed.lines().any(|l| l.trim() == "rust-src") {
        report("rust-src (nightly)", "ok");
        return Ok(());
    }
    util::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))?;
    report("rust-src (nightly)", "installed");
    Ok(())
}

/// Fails clearly when rustup has no nightly toolchain: installing one is not
/// done here because the toolchain is pinned by the machine image.
fn ensure_nightly_installed() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("is rustup installed and on PATH?")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        bail!(
            "no nightly toolchain is installed (rustup toolchain list:\n{}); \
             the eBPF crate needs one: rustup toolchain install nightly --component rust-src",
            toolchains.trim()
        );
    }
    Ok(())
}

/// bpf-linker, built against the nightly toolchain's own shared libLLVM.
fn ensure_bpf_linker() -> Result<()> {
    let item = format!("bpf-linker {BPF_LINKER_VERSION}");
    match bpf_linker_version() {
        Ok(v) if v == BPF_LINKER_VERSION => {
            report(&item, "ok");
            return Ok(());
        }
        Ok(v) => report(&item, &format!("found version {v}; installing")),
        Err(e) => report(&item, &format!("not usable ({e:#}); installing")),
    }
    install_bpf_linker()?;
    match bpf_linker_version() {
        Ok(v) if v == BPF_LINKER_VERSION => {
            report(&item, "installed");
            Ok(())
        }
        Ok(v) => bail!(
            "after installing, `bpf-linker` on PATH is version {v}: is another copy \
             ahead of cargo's bin directory on PATH?"
        ),
        Err(e) => Err(e.context(
            "bpf-linker was installed but does not run; is cargo's bin directory \
             (~/.cargo/bin or $CARGO_INSTALL_ROOT/bin) on PATH?",
        )),
    }
}

/// The version `bpf-linker --version` prints. Running it (not only finding it)
/// also proves its libLLVM loads.
fn bpf_linker_version() -> Result<String> {
    // Cargo adds toolchain directories to LD_LIBRARY_PATH for `cargo run`;
    // check the binary the way a shell or aya-build's cargo would find it.
    let out = output(
        Command::new("bpf-linker")
            .arg("--version")
            .env_remove("LD_LIBRARY_PATH"),
    )?;
    out.split_whitespace()
        .last()
        .map(str::to_owned)
        .with_context(|| format!("unexpected `bpf-linker --version` output {out:?}"))
}

/// Links the nightly's libLLVM into a private prefix and builds bpf-linker
/// against it with `cargo install`.
fn install_bpf_linker() -> Result<()> {
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    let major = nightly_llvm_major()?;
    let libllvm = find_libllvm(&sysroot.join("lib"))?;
    let prefix = llvm_prefix(major)?;
    link_libllvm(&libllvm, &prefix)?;

    let install = |locked: bool| {
        let mut cmd = util::cargo();
        cmd.args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
        ]);
        if locked {
            cmd.arg("--locked");
        }
        cmd.args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix);
        util::run(&mut cmd)
    };
    if let Err(e) = install(true) {
        eprintln!("setup: `cargo install --locked` failed ({e:#}); retrying without --locked");
        install(false)?;
    }
    Ok(())
}

/// The LLVM major version of the nightly toolchain, from `rustc +nightly -vV`
/// (`LLVM version: 22.1.4` gives 22).
fn nightly_llvm_major() -> Result<u32> {
    let info = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .with_context(|| format!("no `LLVM version:` line in `rustc +nightly -vV`:\n{info}"))?
        .trim();
    version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read the LLVM major version from {version:?}"))
}

/// The nightly's shared libLLVM: the file in `sysroot/lib` whose name starts
/// with `libLLVM.so.` (e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`).
fn find_libllvm(lib_dir: &Path) -> Result<PathBuf> {
    let entries =
        std::fs::read_dir(lib_dir).with_context(|| format!("reading {}", lib_dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", lib_dir.display()))?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("libLLVM.so.")
        {
            return Ok(entry.path());
        }
    }
    bail!(
        "no libLLVM.so.* in {}: this nightly ships no shared libLLVM to build bpf-linker against",
        lib_dir.display()
    )
}

/// `$HOME/.cache/hostscope/llvm-<major>`: where bpf-linker's build finds libLLVM.
fn llvm_prefix(major: u32) -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home)
        .join(".cache/hostscope")
        .join(format!("llvm-{major}")))
}

/// Creates `prefix/lib/libLLVM.so` (what the build links with) and
/// `prefix/lib/<soname>` (what the built binary loads through its RUNPATH),
/// both pointing at the toolchain's library.
fn link_libllvm(libllvm: &Path, prefix: &Path) -> Result<()> {
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let soname = libllvm
        .file_name()
        .with_context(|| format!("{} has no file name", libllvm.display()))?;
    for name in [Path::new("libLLVM.so"), Path::new(soname)] {
        let link = lib.join(name);
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        symlink(libllvm, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), libllvm.display()))?;
    }
    Ok(())
}

/// Installs the missing [`DEBIAN_PACKAGES`] with apt (one `apt-get update`).
fn ensure_debian_packages() -> Result<()> {
    let mut missing = Vec::new();
    for &pkg in DEBIAN_PACKAGES {
        if debian_package_installed(pkg) {
            report(pkg, "ok");
        } else {
            missing.push(pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "Debian packages missing: {}; installing them needs root: \
             sudo apt-get install {0}",
            missing.join(" ")
        );
    }
    util::run(Command::new("apt-get").arg("update"))?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    for pkg in missing {
        report(pkg, "installed");
    }
    Ok(())
}

/// Whether dpkg reports `pkg` as fully installed.
fn debian_package_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"install ok installed")
}

/// Where tracefs is mounted; classic tracepoints (what libbpf-tools' syscount
/// attaches to) need it, and it is not mounted at boot on this kind of machine.
const TRACEFS: &str = "/sys/kernel/tracing";

/// Mounts tracefs when it is not mounted (needs root; skipped with a note
/// otherwise, since only the reference tools need it).
fn ensure_tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("events").is_dir() {
        report("tracefs", "ok");
        return Ok(());
    }
    if !util::is_root() {
        report(
            "tracefs",
            "not mounted (needs root: mount -t tracefs tracefs /sys/kernel/tracing)",
        );
        return Ok(());
    }
    util::run(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]))?;
    report("tracefs", "mounted");
    Ok(())
}

/// The musl standard library for the toolchain that builds the agent
/// (the workspace's default one), for the static binary.
fn ensure_musl_target() -> Result<()> {
    let installed = output(util::rustup_for_workspace().args(["target", "list", "--installed"]))?;
    if installed.lines().any(|l| l.trim() == MUSL_TARGET) {
        report(MUSL_TARGET, "ok");
        return Ok(());
    }
    util::run(util::rustup_for_workspace().args(["target", "add", MUSL_TARGET]))?;
    report(MUSL_TARGET, "installed");
    Ok(())
}

/// kubectl, for `kubectl kustomize` in the deploy tests. Debian 12's own
/// `kubernetes-client` (1.20) embeds a kustomize too old for the
/// kustomization, so the `kubectl` package of the machine image (or of the
/// Kubernetes apt repository, when configured) is used.
fn ensure_kubectl() -> Result<()> {
    if let Ok(v) = output(Command::new("kubectl").args(["version", "--client"])) {
        let kustomize = v
            .lines()
            .find_map(|l| l.strip_prefix("Kustomize Version: v"))
            .and_then(|v| v.split('.').next()?.parse::<u32>().ok());
        if kustomize.is_some_and(|major| major >= 5) {
            report("kubectl", "ok");
            return Ok(());
        }
        bail!("`kubectl version --client` shows no kustomize 5 or later:\n{v}");
    }
    if !util::is_root() {
        bail!("kubectl is missing; installing it needs root: sudo apt-get install kubectl");
    }
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "kubectl"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context(
        "kubectl is not installed and apt cannot install it; add the Kubernetes \
         apt repository (pkgs.k8s.io) or install kubectl 1.27+ by hand",
    )?;
    report("kubectl", "installed");
    Ok(())
}

/// kubernetes-validate from PyPI in [`deploy_venv`], at the pinned version.
fn ensure_kubernetes_validate() -> Result<()> {
    let item = format!("kubernetes-validate {KUBERNETES_VALIDATE_VERSION}");
    let venv = deploy_venv();
    let tool = venv.join("bin/kubernetes-validate");
    let version = || output(Command::new(&tool).arg("--version")).map(|v| v.trim().to_owned());
    if version().is_ok_and(|v| v.ends_with(KUBERNETES_VALIDATE_VERSION)) {
        report(&item, "ok");
        return Ok(());
    }
    // Debian's python3 (python3-venv), not whatever python3 is first on PATH.
    util::run(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv),
    )?;
    util::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!(
                "kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"
            )),
    )?;
    let v = version()?;
    if !v.ends_with(KUBERNETES_VALIDATE_VERSION) {
        bail!(
            "after installing, `{} --version` prints {v:?}",
            tool.display()
        );
    }
    report(&item, "installed");
    Ok(())
}
