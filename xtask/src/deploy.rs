//! `cargo xtask image` and `cargo xtask package`: the container image
//! (`deploy/container/Containerfile`) and the systemd tarball
//! (`target/package/hostscope-<version>-x86_64-linux.tar.gz`), both around one
//! statically linked release binary built for x86_64-unknown-linux-musl.
//!
//! `cargo xtask test` builds both once (step "image and package") before the
//! integration tests, whose `deploy` tests check what was built.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, util};

/// The Rust target of the shipped binary: static, no libc needed on the host
/// or in the image.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The image's name; tagged with the workspace version and `latest`.
pub const IMAGE: &str = "localhost/hostscope";

/// The workspace version (xtask shares it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Capabilities the binary carries in the image, as file-permitted ones:
/// Kubernetes gives a non-root container no ambient capabilities, so the
/// container's added capabilities reach the agent only through these.
const FILE_CAPS: &str = "cap_bpf,cap_perfmon=p";

/// The CA bundle copied into the image for https:// collectors.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The files of the tarball besides the binary, from `deploy/systemd/`
/// (name, mode).
const PACKAGE_FILES: &[(&str, u32)] = &[
    ("hostscope.service", 0o644),
    ("config.yaml", 0o644),
    ("hostscope.env.example", 0o644),
    ("install.sh", 0o755),
];

/// `cargo xtask image`.
pub fn image() -> Result<()> {
    setup::run()?;
    let bin = build_static()?;
    build_image(&bin)
}

/// `cargo xtask package`.
pub fn package() -> Result<()> {
    setup::run()?;
    let bin = build_static()?;
    let tarball = build_package(&bin)?;
    eprintln!("package: {}", tarball.display());
    Ok(())
}

/// Both, from one build (the `cargo xtask test` step).
pub fn image_and_package() -> Result<()> {
    let bin = build_static()?;
    build_image(&bin)?;
    build_package(&bin)?;
    Ok(())
}

/// `cargo build --release -p hostscope --target x86_64-unknown-linux-musl`;
/// returns the binary after checking it is statically linked.
pub fn build_static() -> Result<PathBuf> {
    util::run(util::cargo().args([
        "build",
        "--release",
        "-p",
        "hostscope",
        "--target",
        MUSL_TARGET,
    ]))?;
    let bin = util::target_dir()
        .join(MUSL_TARGET)
        .join("release")
        .join("hostscope");
    let data = fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
    if has_interpreter(&data).with_context(|| format!("parsing {}", bin.display()))? {
        bail!(
            "{} asks for a dynamic loader (PT_INTERP): it is not static",
            bin.display()
        );
    }
    Ok(bin)
}

/// Whether a 64-bit little-endian ELF file has a `PT_INTERP` program header
/// (a dynamic loader), i.e. is not a static executable.
fn has_interpreter(elf: &[u8]) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        bail!("not a 64-bit little-endian ELF file");
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let kind = elf
            .get(at..at + 4)
            .context("program header past the end of the file")?;
        if u32::from_le_bytes(kind.try_into()?) == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Builds `localhost/hostscope:<version>` and `:latest` with podman from a
/// context holding only the binary (with its file capabilities) and the CA
/// bundle.
fn build_image(bin: &Path) -> Result<()> {
    if !util::is_root() {
        bail!(
            "building the image sets file capabilities (setcap), which needs root: sudo -E cargo xtask image"
        );
    }
    let context = util::target_dir().join("image-context");
    fresh_dir(&context)?;
    let staged = context.join("hostscope");
    copy_mode(bin, &staged, 0o755)?;
    util::run(Command::new("setcap").arg(FILE_CAPS).arg(&staged))?;
    copy_mode(
        Path::new(CA_BUNDLE),
        &context.join("ca-certificates.crt"),
        0o644,
    )?;
    let containerfile = util::workspace_root().join("deploy/container/Containerfile");
    util::run(
        Command::new("podman")
            .arg("build")
            .arg("--file")
            .arg(&containerfile)
            .args(["--tag", &format!("{IMAGE}:{VERSION}")])
            .args(["--tag", &format!("{IMAGE}:latest")])
            .args([
                "--label",
                &format!("org.opencontainers.image.version={VERSION}"),
            ])
            .arg(&context),
    )?;
    eprintln!("image: {IMAGE}:{VERSION} and {IMAGE}:latest");
    Ok(())
}

/// The tarball's path for this version.
pub fn package_path() -> PathBuf {
    util::target_dir()
        .join("package")
        .join(format!("{}.tar.gz", package_name()))
}

/// `hostscope-<version>-x86_64-linux`: the tarball's name and top directory.
fn package_name() -> String {
    format!("hostscope-{VERSION}-x86_64-linux")
}

/// Stages the binary and `deploy/systemd/*` under `target/package/<name>/`
/// and packs them with tar (owner root, sorted, fixed mtime).
fn build_package(bin: &Path) -> Result<PathBuf> {
    let out = util::target_dir().join("package");
    let name = package_name();
    let stage = out.join(&name);
    fresh_dir(&stage)?;
    copy_mode(bin, &stage.join("hostscope"), 0o755)?;
    let systemd = util::workspace_root().join("deploy/systemd");
    for &(file, mode) in PACKAGE_FILES {
        copy_mode(&systemd.join(file), &stage.join(file), mode)?;
    }
    let tarball = package_path();
    util::run(
        Command::new("tar")
            .args([
                "--create",
                "--gzip",
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mtime=@0",
                "--file",
            ])
            .arg(&tarball)
            .arg("--directory")
            .arg(&out)
            .arg(&name),
    )?;
    fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    Ok(tarball)
}

/// Removes `dir` if it exists and creates it empty.
fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Copies `from` to `to` and sets `to`'s permission bits to `mode`.
fn copy_mode(from: &Path, to: &Path, mode: u32) -> Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_interpreter_is_found_in_a_dynamic_executable() {
        // This test binary is built for the host (glibc, dynamic).
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&me).unwrap());
    }

    #[test]
    fn non_elf_is_an_error() {
        assert!(has_interpreter(b"#!/bin/sh\n").is_err());
    }
}
