//! The agent's contract with operators: exit codes, --duration, and what it
//! says when it lacks a capability.

use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use hostscope_tests::{hostscope_bin, otlp, require_root};
use serde_json::Value;

/// Runs the agent to completion; killed after 60 s so a run that should
/// have exited cannot hang the suite (it then fails on its exit status).
fn run(args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["--signal=KILL", "60"])
        .arg(hostscope_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run hostscope")
}

fn metrics_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|v: &Value| v.get("resourceMetrics").is_some())
        .collect()
}

/// A config file with an unknown key or a bad value exits 2, naming the
/// file and the key, before anything is attached.
#[test]
fn bad_config_file_exits_2_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("hostscope-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    for (i, (text, key)) in [
        ("syscalls:\n  max_seriez: 10\n", "syscalls.max_seriez"),
        ("otlp:\n  compression: zstd\n", "otlp.compression"),
        ("export:\n  queue_bytes: 10\n", "export.queue_bytes"),
        ("interval: often\n", "interval"),
        ("listen: 9464\n", "listen"),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.join(format!("bad-{i}.yaml"));
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap();
        let out = run(&["run", "--exporter", "stdout", "--config", path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{text:?} should exit 2; stderr: {stderr}"
        );
        assert!(
            stderr.contains(path) && stderr.contains(key),
            "{text:?}: the message should name {path} and {key}; got: {stderr}"
        );
        assert!(
            !stderr.contains("attached"),
            "{text:?}: nothing may be attached; got: {stderr}"
        );
    }
}

#[test]
fn bad_flags_exit_2_before_attaching() {
    for (args, names) in [
        (&["run", "--interval", "0"][..], "--interval"),
        (&["run", "--interval", "soon"], "--interval"),
        (&["run", "--exporter", "carrier-pigeon"], "--exporter"),
        (
            &["run", "--max-syscall-series", "1"],
            "--max-syscall-series",
        ),
        (&["run", "--slow-threshold", "fast"], "--slow-threshold"),
        (&["run", "--listen", "9464"], "--listen"),
        (&["run", "--prometheus-listen", "localhost"], "--listen"),
        (&["run", "--bogus"], "--bogus"),
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} should exit 2; stderr: {stderr}"
        );
        assert!(
            stderr.contains(names),
            "{args:?}: the message should name {names}; got: {stderr}"
        );
        assert!(
            !stderr.contains("attached"),
            "{args:?}: nothing may be attached; got: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: no data on stdout");
    }
}

#[test]
fn duration_exits_cleanly_with_a_final_flush() {
    require_root();
    let t = Instant::now();
    // Only the syscalls signal, so the attached programs are known.
    let out = run(&[
        "run",
        "--exporter",
        "stdout",
        "--interval",
        "30",
        "--duration",
        "1",
        "--no-tcp",
        "--no-sched",
        "--no-oom",
    ]);
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "exit status {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The interval (30 s) never elapsed: the one line is the final flush.
    assert!(took < Duration::from_secs(25), "--duration 1 took {took:?}");
    let lines = metrics_lines(&out);
    assert_eq!(
        lines.len(),
        1,
        "expected exactly the final flush, got {} lines",
        lines.len()
    );
    let attached = otlp::points(
        &otlp::resources(&lines[0])
            .into_iter()
            .find(|(a, _)| otlp::attr(a, "service.name") == Some("hostscope"))
            .expect("agent resource")
            .1,
        "hostscope.agent.program.attached",
    )
    .len();
    assert_eq!(
        attached, 5,
        "sys_enter, sys_exit and sched_switch (syscalls), sched_process_fork and \
         sched_process_exec (process identity) should be reported attached"
    );
}

/// With CAP_BPF but without CAP_PERFMON, maps can be created but tracing
/// programs cannot be loaded: the agent must name the program and the missing
/// capability in one line, and keep running (exporting its own telemetry).
#[test]
fn missing_capability_is_named_and_the_agent_keeps_running() {
    require_root();
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args([
            "--inh-caps",
            "-all,+bpf",
            "--ambient-caps",
            "+bpf",
            "--bounding-set",
            "-all,+bpf",
        ])
        .arg(hostscope_bin())
        .args([
            "run",
            "--exporter",
            "stdout",
            "--interval",
            "0.3",
            "--duration",
            "1",
            // A port of its own: a busy 9464 would add an ERROR line.
            "--listen",
            "127.0.0.1:0",
        ])
        .env("NO_COLOR", "1")
        .output()
        .expect("run setpriv (util-linux)");
    // Every BPF signal fails alike; the syscalls one is checked in detail.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "agent should keep running and exit 0; status {}; stderr: {stderr}",
        out.status
    );
    let line = stderr
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("syscalls signal"))
        .unwrap_or_else(|| {
            panic!("expected an ERROR line for the syscalls signal; stderr: {stderr}")
        });
    for needle in ["sys_exit", "CAP_PERFMON", "Operation not permitted"] {
        assert!(
            line.contains(needle),
            "the error line should mention {needle}: {line}"
        );
    }
    // One line per signal that could not start (syscalls, tcp, sched, oom).
    for signal in ["syscalls", "tcp", "sched", "oom"] {
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("ERROR") && l.contains(&format!("{signal} signal not attached")))
            .collect();
        assert_eq!(lines.len(), 1, "one ERROR line for {signal}: {stderr}");
        assert!(
            lines[0].contains("CAP_BPF") || lines[0].contains("Operation not permitted"),
            "{signal}: the line names what is missing: {}",
            lines[0]
        );
    }
    assert_eq!(
        stderr.lines().filter(|l| l.contains("ERROR")).count(),
        4,
        "one line per failure: {stderr}"
    );
    let lines = metrics_lines(&out);
    assert!(
        lines.len() >= 2,
        "agent should keep exporting; got {} lines",
        lines.len()
    );
    let agent = otlp::resources(lines.last().unwrap())
        .into_iter()
        .find(|(a, _)| otlp::attr(a, "service.name") == Some("hostscope"))
        .expect("agent resource");
    assert!(
        otlp::points(&agent.1, "hostscope.agent.program.attached").is_empty(),
        "nothing should be reported attached"
    );
}

/// On a kernel with BTF (this one), every hook of every signal attaches as
/// a BTF tracepoint: a program the verifier rejects in that form falls back
/// to a raw tracepoint silently (an INFO line), so only this test notices.
#[test]
fn every_hook_attaches_as_a_btf_tracepoint_on_this_kernel() {
    require_root();
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        eprintln!("skipped: no /sys/kernel/btf/vmlinux, BTF tracepoints cannot attach");
        return;
    }
    let out = run(&[
        "run",
        "--exporter",
        "stdout",
        "--interval",
        "1",
        "--duration",
        "1",
        "--listen",
        "none",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "status {}: {stderr}", out.status);
    let attached: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("signal attached"))
        .collect();
    assert_eq!(
        attached.len(),
        4,
        "expected the syscalls, tcp, sched and oom signals attached: {stderr}"
    );
    for line in attached {
        assert!(
            line.contains("tp_btf") && !line.contains("raw_tp"),
            "every hook should be a BTF tracepoint (tp_btf) on this kernel: {line}"
        );
    }
    let fallbacks: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("BTF tracepoint unavailable"))
        .collect();
    assert!(
        fallbacks.is_empty(),
        "no hook should fall back from its BTF tracepoint here: {fallbacks:#?}"
    );
}

/// Every exported resource names the host as the system itself does:
/// `host.id` is /etc/machine-id, `host.name` the kernel's hostname,
/// `os.version` the kernel release, `host.arch` the machine (OpenTelemetry
/// spelling), and `k8s.node.name` the node name given.
#[test]
fn host_identity_matches_the_system() {
    require_root();
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .to_string()
    };
    let machine = String::from_utf8(
        Command::new("uname")
            .arg("-m")
            .output()
            .expect("uname -m")
            .stdout,
    )
    .unwrap();
    let arch = match machine.trim() {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no OpenTelemetry host.arch spelling known to this test for {other}"),
    };
    let want = [
        ("host.id", read("/etc/machine-id")),
        ("host.name", read("/proc/sys/kernel/hostname")),
        ("os.version", read("/proc/sys/kernel/osrelease")),
        ("host.arch", arch.to_string()),
        ("k8s.node.name", "node-a".to_string()),
    ];
    let out = run(&[
        "run",
        "--exporter",
        "stdout",
        "--interval",
        "1",
        "--duration",
        "1",
        "--listen",
        "none",
        "--k8s-node-name",
        "node-a",
    ]);
    assert!(
        out.status.success(),
        "status {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = metrics_lines(&out);
    let resources: Vec<&Value> = lines
        .iter()
        .flat_map(|l| l["resourceMetrics"].as_array().into_iter().flatten())
        .collect();
    assert!(!resources.is_empty(), "no resources exported");
    for r in resources {
        let attrs = r["resource"]["attributes"].as_array().unwrap();
        for (key, value) in &want {
            let seen = attrs
                .iter()
                .find(|a| a["key"] == *key)
                .and_then(|a| a["value"]["stringValue"].as_str());
            assert_eq!(
                seen,
                Some(value.as_str()),
                "{key} on every resource should be {value:?}; resource: {}",
                r["resource"]
            );
        }
    }
}

/// A configured `host.name` (the DaemonSet passes the node's name in
/// OTEL_RESOURCE_ATTRIBUTES) replaces the detected one, once per resource.
#[test]
fn a_configured_host_name_wins_over_the_detected_one() {
    require_root();
    let out = Command::new("timeout")
        .args(["--signal=KILL", "60"])
        .arg(hostscope_bin())
        .args([
            "run",
            "--exporter",
            "stdout",
            "--interval",
            "1",
            "--duration",
            "1",
            "--listen",
            "none",
        ])
        .env("OTEL_RESOURCE_ATTRIBUTES", "host.name=node-7")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run hostscope");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = metrics_lines(&out);
    let resources: Vec<&Value> = lines
        .iter()
        .flat_map(|l| l["resourceMetrics"].as_array().into_iter().flatten())
        .collect();
    assert!(!resources.is_empty(), "no resources exported");
    for r in resources {
        let names: Vec<&str> = r["resource"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["key"] == "host.name")
            .filter_map(|a| a["value"]["stringValue"].as_str())
            .collect();
        assert_eq!(names, vec!["node-7"], "host.name of {}", r["resource"]);
    }
}
