//! Least privilege, proved: the agent runs as a non-root user with exactly
//! the systemd unit's capabilities (CAP_BPF, CAP_PERFMON) and counts a
//! workload exactly; with one of them fewer it names the missing one; after
//! attaching it holds no capability at all (every thread, all five sets,
//! the bounding set too when it may drop from it) while data keeps flowing;
//! and its HTTP listener answers /healthz, /readyz and /metrics.
//!
//! Finding recorded here: CAP_BPF + CAP_PERFMON load and attach every
//! signal. Without CAP_SYS_PTRACE, `/proc/<pid>/exe` of processes of other
//! users (or holding capabilities the agent lacks) cannot be read; the
//! executable name then comes from `comm`, completed from `argv[0]` where
//! `comm` was cut at 15 bytes. The workload here runs as root, so the
//! name checked below comes from that path.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use hostscope_tests::{Lines, Mix, Workload, hostscope_bin, otlp, require_root, wait_timeout};
use serde_json::Value;

/// setpriv arguments running the agent as nobody (65534) with exactly `caps`
/// (e.g. "+bpf,+perfmon") in its inheritable, ambient and bounding sets.
fn as_nobody_with(caps: &str) -> Vec<String> {
    [
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        "--inh-caps",
        &format!("-all,{caps}"),
        "--ambient-caps",
        caps,
        "--bounding-set",
        &format!("-all,{caps}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A running agent (directly or under setpriv), killed on drop.
struct Running {
    child: Option<Child>,
    /// Metrics lines (OTLP/JSON) from stdout.
    metrics: Receiver<Value>,
    stderr: Lines,
}

impl Running {
    /// `hostscope run <args>`, under `setpriv <setpriv>` when given.
    fn start(setpriv: Option<Vec<String>>, args: &[&str]) -> Running {
        require_root();
        let mut cmd = match &setpriv {
            Some(s) => {
                let mut c = Command::new("setpriv");
                c.args(s).arg(hostscope_bin());
                c
            }
            None => Command::new(hostscope_bin()),
        };
        let mut child = cmd
            .arg("run")
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hostscope (setpriv from util-linux)");
        let stderr = Lines::default();
        stderr.spawn_reader(child.stderr.take().unwrap());
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v.get("resourceMetrics").is_some() && tx.send(v).is_err() {
                    break;
                }
            }
        });
        Running {
            child: Some(child),
            metrics: rx,
            stderr,
        }
    }

    /// The agent's pid (setpriv execs it, so it is the child's).
    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn wait_log(&self, needle: &str, what: &str) {
        self.stderr.wait_for(needle, Duration::from_secs(60), what);
    }

    /// The listener's address, from its start-up line.
    fn listen_addr(&self) -> String {
        self.wait_log("HTTP listener serving", "listener start");
        let text = self.stderr.text();
        let line = text
            .lines()
            .find(|l| l.contains("HTTP listener serving"))
            .unwrap();
        line.split("addr=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no addr= in {line:?}"))
            .to_string()
    }

    fn next_metrics(&self, timeout: Duration) -> Value {
        self.metrics.recv_timeout(timeout).unwrap_or_else(|e| {
            panic!(
                "expected a metrics line within {timeout:?} ({e}); agent log:\n{}",
                self.stderr.text()
            )
        })
    }

    /// Sends SIGTERM and expects a clean exit.
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = wait_timeout(&mut child, Duration::from_secs(30)).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("agent did not exit within 30 s of SIGTERM")
        });
        assert!(
            status.success(),
            "agent should exit 0 after SIGTERM, got {status}; log:\n{}",
            self.stderr.text()
        );
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `GET path` over HTTP/1.0: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    hostscope_tests::http_get(addr, path).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// Capability masks of every thread of `pid`: (tid, field, mask).
fn thread_caps(pid: u32) -> Vec<(String, &'static str, u64)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("agent tasks") {
        let t = t.unwrap();
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        for field in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            let mask = status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{field}:")))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap_or_else(|| panic!("{field} missing from {status}"));
            out.push((t.file_name().to_string_lossy().into_owned(), field, mask));
        }
    }
    out
}

const CAP_SYS_ADMIN: u64 = 1 << 21;
const CAP_PERFMON: u64 = 1 << 38;
const CAP_BPF: u64 = 1 << 39;

/// Asserts every thread's inheritable, permitted, effective and ambient
/// sets are empty and its bounding set is `bounding`.
fn assert_no_capabilities(pid: u32, bounding: u64, log: &Lines) {
    let caps = thread_caps(pid);
    assert!(
        caps.len() >= 10,
        "expected the main and the listener thread: {caps:?}"
    );
    for (tid, field, mask) in caps {
        let want = if field == "CapBnd" { bounding } else { 0 };
        assert_eq!(
            mask,
            want,
            "thread {tid} of the agent: {field} expected {want:#x}, saw {mask:#x}; log:\n{}",
            log.text()
        );
    }
}

/// The getppid count of `pid` in one metrics line, if it is there.
fn getppid_count(line: &Value, pid: u32) -> Option<u64> {
    let (_, metrics) = otlp::process_metrics(line, pid)?;
    let p = otlp::point(
        &metrics,
        "hostscope.syscall.duration",
        &[("syscall.name", "getppid")],
    )?;
    Some(otlp::num(&p["count"]))
}

/// Runs a workload making `n` getppid calls and asserts that an export taken
/// after them counts exactly `n` for its pid; returns its attributes.
fn count_workload(agent: &Running, n: u64) -> otlp::Attrs {
    let mut w = Workload::spawn(Mix {
        getppid: n,
        ..Mix::default()
    });
    w.run();
    let pid = w.pid;
    // Lines already out, and the one being collected now, may hold part of
    // the calls: skip them; the next is collected after the workload's
    // last call (it then waits, blocked on stdin, so the count stays).
    while agent.metrics.try_recv().is_ok() {}
    agent.next_metrics(Duration::from_secs(60));
    let line = agent.next_metrics(Duration::from_secs(60));
    let seen = getppid_count(&line, pid).unwrap_or_else(|| {
        panic!(
            "pid {pid} (getppid) missing from an export after its calls; log:\n{}",
            agent.stderr.text()
        )
    });
    assert_eq!(
        seen,
        n,
        "getppid calls of pid {pid}: expected {n}, saw {seen}; log:\n{}",
        agent.stderr.text()
    );
    let attrs = otlp::process_metrics(&line, pid).unwrap().0;
    drop(w);
    attrs
}

/// The systemd unit's set, as a non-root user: every signal attaches, the
/// workload's calls are counted exactly, nothing is logged as an error, and
/// after attaching the agent holds nothing (its bounding set stays as given:
/// dropping from it needs CAP_SETPCAP; no_new_privs is set instead).
#[test]
fn nobody_with_bpf_and_perfmon_attaches_everything_and_counts_exactly() {
    let agent = Running::start(
        Some(as_nobody_with("+bpf,+perfmon")),
        &[
            "--exporter",
            "stdout",
            "--interval",
            "1",
            "--slow-threshold",
            "off",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    for signal in [
        "syscalls signal attached",
        "tcp signal attached",
        "sched signal attached",
        "oom signal attached",
        "cgroups signal started",
        "capabilities dropped after attaching",
    ] {
        agent.wait_log(signal, signal);
    }
    let log = agent.stderr.text();
    let dropped = log
        .lines()
        .find(|l| l.contains("capabilities dropped"))
        .unwrap();
    assert!(
        dropped.contains("dropped=\"CAP_PERFMON,CAP_BPF\""),
        "the log should name what was dropped: {dropped}"
    );
    assert_no_capabilities(agent.pid(), CAP_BPF | CAP_PERFMON, &agent.stderr);
    let attrs = count_workload(&agent, 2_345);
    assert_eq!(
        otlp::attr(&attrs, "process.executable.name"),
        Some("hostscope-workload"),
        "/proc/<pid>/exe of a root process is unreadable to nobody; the name comes \
         from comm completed by argv[0]: {attrs:?}"
    );
    // Every program reported attached, with run statistics readable.
    let line = agent.next_metrics(Duration::from_secs(30));
    let agent_res = otlp::resources(&line)
        .into_iter()
        .find(|(a, _)| otlp::attr(a, "service.name") == Some("hostscope"))
        .expect("agent resource");
    let attached = otlp::points(&agent_res.1, "hostscope.agent.program.attached").len();
    assert_eq!(
        attached, 13,
        "procs (2), syscalls (3), tcp (6), sched (1), oom (1) programs should be attached"
    );
    let errors: Vec<String> = agent
        .stderr
        .snapshot()
        .into_iter()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    assert!(
        errors.is_empty(),
        "no errors or warnings expected: {errors:#?}"
    );
    agent.stop();
}

/// CAP_PERFMON without CAP_BPF: maps cannot be created; the agent names
/// CAP_BPF in its error and keeps exporting its own telemetry and the
/// file-based signal. (CAP_BPF without CAP_PERFMON: tests/tests/cli.rs.)
#[test]
fn perfmon_alone_names_the_missing_cap_bpf() {
    let agent = Running::start(
        Some(as_nobody_with("+perfmon")),
        &[
            "--exporter",
            "stdout",
            "--interval",
            "0.5",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    agent.wait_log("no signal attached", "the load failure");
    let log = agent.stderr.text();
    let line = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("no signal attached"))
        .unwrap_or_else(|| panic!("expected one ERROR line for the load; log:\n{log}"));
    assert!(
        line.contains("CAP_BPF"),
        "the error should name CAP_BPF: {line}"
    );
    let addr = agent.listen_addr();
    // Still alive, and ready once an interval is out, saying what failed.
    agent.next_metrics(Duration::from_secs(30));
    let (status, body) = wait_ready(&addr);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("failed: syscalls, tcp, sched, oom"),
        "readiness names the failed signals: {body}"
    );
    agent.stop();
}

/// Polls /readyz until 200 (bounded).
fn wait_ready(addr: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(addr, "/readyz");
        if status == 200 || Instant::now() > deadline {
            return (status, body);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// As root: after attaching, every thread's sets are empty, the bounding set
/// is empty too, and a workload started after the drop is still counted
/// exactly (in a later interval than the drop), through map reads and /proc.
#[test]
fn root_drops_every_capability_and_data_keeps_flowing() {
    let agent = Running::start(
        None,
        &[
            "--exporter",
            "stdout",
            "--interval",
            "1",
            "--slow-threshold",
            "off",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    agent.wait_log("capabilities dropped after attaching", "the drop");
    let log = agent.stderr.text();
    let dropped = log
        .lines()
        .find(|l| l.contains("capabilities dropped"))
        .unwrap();
    for cap in ["CAP_SYS_ADMIN", "CAP_PERFMON", "CAP_BPF", "CAP_SYS_PTRACE"] {
        assert!(dropped.contains(cap), "{cap} should be named: {dropped}");
    }
    assert_no_capabilities(agent.pid(), 0, &agent.stderr);
    // First interval after the drop, then a workload counted in a later one.
    agent.next_metrics(Duration::from_secs(30));
    let attrs = count_workload(&agent, 3_456);
    assert_eq!(
        otlp::attr(&attrs, "process.executable.name"),
        Some("hostscope-workload"),
        "{attrs:?}"
    );
    assert_no_capabilities(agent.pid(), 0, &agent.stderr);
    agent.stop();
}

/// `--keep-capabilities`: root keeps CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN
/// in its effective and bounding sets, and says so.
#[test]
fn keep_capabilities_keeps_them() {
    let agent = Running::start(
        None,
        &[
            "--exporter",
            "stdout",
            "--interval",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--keep-capabilities",
        ],
    );
    agent.wait_log("capabilities kept (--keep-capabilities)", "keep");
    agent.next_metrics(Duration::from_secs(30));
    let want = CAP_BPF | CAP_PERFMON | CAP_SYS_ADMIN;
    let main = agent.pid().to_string();
    for (tid, field, mask) in thread_caps(agent.pid()) {
        if tid == main && ["CapEff", "CapPrm", "CapBnd"].contains(&field) {
            assert_eq!(
                mask & want,
                want,
                "{field} should keep bpf, perfmon, sys_admin: {mask:#x}"
            );
        }
    }
    assert!(
        !agent.stderr.text().contains("capabilities dropped"),
        "{}",
        agent.stderr.text()
    );
    agent.stop();
}

/// /readyz is 503 before the first export and 200 after; /healthz 200;
/// /metrics 404 without the prometheus exporter and the exposition with it.
#[test]
fn health_readiness_and_metrics_on_one_listener() {
    // A long interval, so the first /readyz comes well before the first export.
    let agent = Running::start(
        None,
        &[
            "--exporter",
            "stdout",
            "--interval",
            "8",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let addr = agent.listen_addr();
    let (status, body) = http_get(&addr, "/readyz");
    assert_eq!(status, 503, "before the first export: {body}");
    assert!(
        body.starts_with("not ready: loading and attaching")
            || body.contains("waiting for the first interval"),
        "{body}"
    );
    let (status, body) = http_get(&addr, "/healthz");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("alive"), "{body}");
    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("prometheus exporter is not selected"),
        "{body}"
    );
    assert_eq!(http_get(&addr, "/nothing").0, 404);
    agent.wait_log("capabilities dropped", "attach");
    let (status, body) = http_get(&addr, "/readyz");
    assert_eq!(status, 503, "attached, nothing exported yet: {body}");
    assert!(
        body.contains("signals running: syscalls, tcp, sched, oom, cgroups; failed: none")
            && body.contains("waiting for the first interval"),
        "{body}"
    );
    agent.next_metrics(Duration::from_secs(60));
    let (status, body) = wait_ready(&addr);
    assert_eq!(status, 200, "after the first export: {body}");
    assert!(body.contains("first interval exported"), "{body}");
    let (status, body) = http_get(&addr, "/healthz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("completed an interval"), "{body}");
    agent.stop();

    // With the prometheus exporter, /metrics on the same listener.
    let agent = Running::start(
        None,
        &[
            "--exporter",
            "prometheus",
            "--interval",
            "1",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let addr = agent.listen_addr();
    let (status, body) = wait_ready(&addr);
    assert_eq!(status, 200, "{body}");
    let (status, text) = http_get(&addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("# TYPE hostscope_agent_program_attached gauge")
            && text.contains("target_info{"),
        "the exposition of the first interval: {text}"
    );
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    agent.stop();
}

/// `--listen none`: no listener, no line about it; a bad address exits 2
/// naming the flag (file keys: tests/tests/cli.rs).
#[test]
fn listen_none_and_bad_addresses() {
    let out = Command::new(hostscope_bin())
        .args(["run", "--listen", "0.0.0.0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--listen") && stderr.contains("expected IP:PORT"),
        "{stderr}"
    );
    let agent = Running::start(
        None,
        &[
            "--exporter",
            "stdout",
            "--interval",
            "0.5",
            "--listen",
            "none",
        ],
    );
    agent.wait_log("capabilities dropped", "start");
    agent.next_metrics(Duration::from_secs(30));
    assert!(
        !agent.stderr.text().contains("HTTP listener"),
        "{}",
        agent.stderr.text()
    );
    agent.stop();
}
