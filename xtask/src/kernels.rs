//! `cargo xtask kernels`: boots other kernels under qemu (software emulation)
//! with the agent and a workload in a busybox initramfs, and checks that the
//! programs load and attach there and count the workload exactly.
//!
//! The running kernel is only one of the many a DaemonSet meets: a verifier
//! or hook difference (older kernels have no per-program private stack, for
//! example) shows up here, not in the privileged tests. Kernels come from
//! Debian's packages, resolved through their metapackages so the newest build
//! is used; each is checked in every hook mode.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::util;

/// Debian metapackages of the kernels to boot, with what each adds.
const KERNELS: &[(&str, &str)] = &[
    (
        "linux-image-cloud-amd64",
        "Linux 6.1 LTS, voluntary preemption, no private BPF stacks",
    ),
    (
        "linux-image-rt-amd64",
        "Linux 6.1 PREEMPT_RT: BPF programs can be preempted",
    ),
];

/// Hook modes tried on every kernel.
const MODES: &[&str] = &["auto", "raw-tp"];

/// What the workload does inside the VM (checked exactly).
const GETPPID: u64 = 1000;
const EBADF: u64 = 3;
const SLEEPS: u64 = 2;

pub fn run() -> Result<()> {
    util::require_root("cargo xtask kernels")?;
    let dir = util::target_dir().join("kernels");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let initrd = build_initramfs(&dir)?;
    let mut failures = Vec::new();
    for (meta, about) in KERNELS {
        let vmlinuz = fetch_kernel(&dir, meta)?;
        eprintln!("kernels: booting {} ({about})", vmlinuz.display());
        let log = boot(&vmlinuz, &initrd)?;
        match check(&log) {
            Ok(lines) => {
                for l in lines {
                    eprintln!("kernels:   {l}");
                }
            }
            Err(e) => {
                eprintln!("kernels:   FAILED: {e:#}");
                let path = dir.join(format!("{meta}.log"));
                fs::write(&path, &log)?;
                eprintln!("kernels:   console log kept in {}", path.display());
                failures.push(format!("{meta}: {e}"));
            }
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} kernel(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

/// Downloads (once) the kernel a metapackage points to; returns its vmlinuz.
fn fetch_kernel(dir: &Path, meta: &str) -> Result<PathBuf> {
    let deps = util::output(Command::new("apt-cache").args(["depends", meta]))?;
    let pkg = deps
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-"))
        .with_context(|| format!("apt-cache depends {meta} names no linux-image package"))?
        .to_string();
    let unpacked = dir.join(&pkg);
    let boot = unpacked.join("boot");
    if !boot.is_dir() {
        let debs = dir.join("debs");
        fs::create_dir_all(&debs)?;
        util::run(
            Command::new("apt-get")
                .arg("download")
                .arg(&pkg)
                .current_dir(&debs),
        )?;
        let deb = fs::read_dir(&debs)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pkg}_")))
            })
            .with_context(|| format!("apt-get download {pkg} left no .deb"))?;
        util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    }
    fs::read_dir(&boot)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz in {}", boot.display()))
}

/// A gzip'd cpio with busybox, the debug agent and workload, their shared
/// libraries, and an init script that runs each mode and prints the results
/// between markers on the serial console.
fn build_initramfs(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("initramfs");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    for d in ["bin", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying /bin/busybox (apt-get install busybox-static; cargo xtask setup does)")?;
    for name in ["hostscope", "hostscope-workload"] {
        let bin = util::built_binary("debug", name);
        fs::copy(&bin, root.join("bin").join(name))
            .with_context(|| format!("copying {} (build it first)", bin.display()))?;
        let ldd = util::output(Command::new("ldd").arg(&bin))?;
        for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
            let dst = root.join(lib.trim_start_matches('/'));
            fs::create_dir_all(dst.parent().unwrap())?;
            fs::copy(lib, &dst).with_context(|| format!("copying {lib}"))?;
        }
    }
    let mut script = String::from(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\n\
         mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n\
         echo \"KERNEL $(uname -r)\"\n",
    );
    for mode in MODES {
        script.push_str(&format!(
            "rm -f /tmp/out /tmp/err\n\
             hostscope run --exporter stdout --hook-type {mode} --interval 1 --duration 240 \
             > /tmp/out 2> /tmp/err &\nHP=$!\n\
             i=0; while ! grep -q 'syscalls signal attached\\|syscalls signal not attached' /tmp/err && [ $i -lt 150 ]; do sleep 0.2; i=$((i+1)); done\n\
             echo go | hostscope-workload mix --getppid {GETPPID} --ebadf {EBADF} --sleeps {SLEEPS} --sleep-ms 130 > /tmp/wl\n\
             sleep 1; kill -TERM $HP; wait $HP\n\
             echo '@@BEGIN {mode}'; echo '@@WORKLOAD'; cat /tmp/wl; echo '@@STDERR'; cat /tmp/err; \
             echo '@@STDOUT'; cat /tmp/out; echo '@@END'\n"
        ));
    }
    script.push_str("poweroff -f\n");
    let init = root.join("init");
    fs::write(&init, script)?;
    util::run(Command::new("chmod").arg("+x").arg(&init))?;

    let initrd = dir.join("initramfs.cpio.gz");
    let cpio = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc 2>/dev/null | gzip -1 > {}",
            root.display(),
            initrd.display()
        ))
        .status()?;
    if !cpio.success() {
        bail!("building the initramfs failed ({cpio}); is cpio installed?");
    }
    Ok(initrd)
}

/// Boots `vmlinuz` with the initramfs; returns the serial console output.
fn boot(vmlinuz: &Path, initrd: &Path) -> Result<String> {
    let child = Command::new("timeout")
        .args([
            "300",
            "qemu-system-x86_64",
            "-machine",
            "accel=tcg",
            "-cpu",
            "max",
        ])
        .args(["-smp", "2", "-m", "1024", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        // noirqdebug: under software emulation on a busy host, the
        // PREEMPT_RT kernel's threaded serial interrupt can lag enough for
        // the "nobody cared" detector to disable IRQ 4, the console, and
        // the rest of the run's output is lost (seen once in CI on 6.1-rt).
        .args(["-append", "console=ttyS0 quiet panic=-1 noirqdebug"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let out = child.wait_with_output()?;
    let _ = std::io::stderr().flush();
    Ok(String::from_utf8_lossy(&out.stdout).replace('\r', ""))
}

/// Checks every mode's section; returns one summary line per mode.
fn check(log: &str) -> Result<Vec<String>> {
    let kernel = log
        .lines()
        .find_map(|l| l.split("KERNEL ").nth(1))
        .context("the VM never ran init (no KERNEL line)")?
        .trim()
        .to_string();
    let mut lines = Vec::new();
    for mode in MODES {
        let section = log
            .split(&format!("@@BEGIN {mode}\n"))
            .nth(1)
            .and_then(|s| s.split("@@END").next())
            .with_context(|| format!("{kernel}, {mode}: no output section"))?;
        let part = |name: &str, next: &str| {
            section
                .split(&format!("@@{name}\n"))
                .nth(1)
                .and_then(|s| s.split(&format!("@@{next}")).next())
                .unwrap_or("")
                .to_string()
        };
        let (workload, stderr, stdout) = (
            part("WORKLOAD", "STDERR"),
            part("STDERR", "STDOUT"),
            section.split("@@STDOUT\n").nth(1).unwrap_or(""),
        );
        let attached = stderr
            .lines()
            .find(|l| l.contains("syscalls signal attached"))
            .with_context(|| format!("{kernel}, {mode}: not attached; agent log:\n{stderr}"))?;
        let tcp = stderr
            .lines()
            .find(|l| l.contains("tcp signal attached"))
            .and_then(|l| l.split("hooks=").nth(1))
            .and_then(|h| h.split('"').nth(1))
            .with_context(|| {
                format!("{kernel}, {mode}: tcp signal not attached; agent log:\n{stderr}")
            })?
            .to_string();
        for signal in ["sched", "oom"] {
            if !stderr.contains(&format!("{signal} signal attached")) {
                bail!("{kernel}, {mode}: {signal} signal not attached; agent log:\n{stderr}");
            }
        }
        // The sched signal's design: the kernel's own sched_info with BTF
        // tracepoints (every kernel here keeps it), its own timing with raw
        // ones.
        let waits = stderr
            .lines()
            .find(|l| l.contains("sched signal attached"))
            .and_then(|l| l.split("waits=\"").nth(1))
            .and_then(|w| w.split('"').next())
            .unwrap_or("?")
            .to_string();
        let want_waits = if *mode == "raw-tp" {
            "timed at wake-up"
        } else {
            "kernel sched_info"
        };
        if waits != want_waits {
            bail!(
                "{kernel}, {mode}: sched waits {waits:?}, expected {want_waits:?}; agent log:\n{stderr}"
            );
        }
        let pid: u64 = workload
            .lines()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .and_then(|v| v["pid"].as_u64())
            .with_context(|| {
                format!("{kernel}, {mode}: the workload printed no result: {workload}")
            })?;
        let counts = counts(stdout, pid);
        let want = [
            ("getppid", GETPPID),
            ("fchdir", EBADF),
            ("nanosleep", SLEEPS),
        ];
        for (name, n) in want {
            let seen = counts.iter().find(|(s, _)| s == name).map(|(_, c)| *c);
            if seen != Some(n) {
                bail!(
                    "{kernel}, {mode}: {name} count for pid {pid}: expected {n}, saw {seen:?} \
                     ({} stdout lines, {} naming the pid); agent log:\n{stderr}",
                    stdout.lines().count(),
                    stdout
                        .lines()
                        .filter(|l| l.contains(&format!("\"{pid}\"")))
                        .count()
                );
            }
        }
        let hooks = attached
            .split("signal attached")
            .nth(1)
            .unwrap_or("")
            .trim();
        lines.push(format!("{kernel}, --hook-type {mode}: attached {hooks}; getppid {GETPPID}, fchdir {EBADF}, nanosleep {SLEEPS}: exact; tcp: {tcp}; sched (waits: {waits}) and oom attached"));
    }
    Ok(lines)
}

/// (syscall, count) of `hostscope.syscall.duration` for `pid` in the last
/// metrics line that has the process.
fn counts(stdout: &str, pid: u64) -> Vec<(String, u64)> {
    let pid = pid.to_string();
    let mut last = Vec::new();
    for line in stdout.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        for rm in v["resourceMetrics"].as_array().into_iter().flatten() {
            let is_pid = rm["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| {
                    a["key"] == "process.pid"
                        && a["value"]["intValue"].as_str() == Some(pid.as_str())
                });
            if !is_pid {
                continue;
            }
            let mut found = Vec::new();
            for m in rm["scopeMetrics"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["metrics"].as_array().into_iter().flatten())
            {
                if m["name"] != "hostscope.syscall.duration" {
                    continue;
                }
                for p in m["exponentialHistogram"]["dataPoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let name = p["attributes"][0]["value"]["stringValue"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    let count = p["count"]
                        .as_str()
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    found.push((name, count));
                }
            }
            if !found.is_empty() {
                last = found;
            }
        }
    }
    last
}
