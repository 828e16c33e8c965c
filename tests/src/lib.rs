//! Support for hostscope's privileged end-to-end tests: run the real agent
//! binary, run workloads whose syscalls the test controls, and read the
//! OTLP/JSON the agent prints.
//!
//! Failures panic with what was expected and what was seen, including the
//! agent's log, so a red test says why.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod cgroup;
pub mod collector;
pub mod netns;
pub mod otlp;

/// Path of the agent binary: `$HOSTSCOPE_BIN`, else in this test's target
/// directory.
pub fn hostscope_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HOSTSCOPE_BIN") {
        return PathBuf::from(p);
    }
    target_bin("hostscope")
}

/// A binary of the workspace in the same target directory as this test:
/// target/<profile>/deps/<test-binary> -> target/<profile>/<name>.
pub fn target_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found; build it first (cargo xtask test does)",
        p.display()
    );
    p
}

/// Panics unless running as root: these tests load eBPF programs.
pub fn require_root() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the end-to-end tests load eBPF programs and must run as root (cargo xtask test does)"
    );
}

/// Mounts tracefs if it is not mounted: classic tracepoints (used by the
/// reference tool syscount) need it. Leaves it mounted, as a boot would.
pub fn ensure_tracefs() {
    if std::path::Path::new("/sys/kernel/tracing/events").exists() {
        return;
    }
    let status = Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status()
        .expect("run mount");
    assert!(
        status.success(),
        "mounting tracefs at /sys/kernel/tracing failed: {status}"
    );
}

/// Lines a child wrote to one stream, shared with a reader thread.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    pub fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }

    /// Collects the lines of `stream` on a thread of their own.
    pub fn spawn_reader(&self, stream: impl std::io::Read + Send + 'static) {
        let lines = self.0.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        self.snapshot().join("\n")
    }

    /// Waits until a line contains `needle`; panics after `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration, what: &str) -> String {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(l) = self.0.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{what}: expected a line containing {needle:?} within {timeout:?}; saw:\n{}",
            self.text()
        );
    }
}

/// A running `hostscope run --exporter stdout`.
pub struct Agent {
    child: Option<Child>,
    lines: Receiver<Value>,
    reader: Option<thread::JoinHandle<()>>,
    pub stderr: Lines,
}

impl Agent {
    /// Starts the agent with `args` after `run --exporter stdout` and waits
    /// until the syscalls signal is attached.
    pub fn start(args: &[&str]) -> Agent {
        Self::start_with(&[&["--exporter", "stdout"][..], args].concat(), &[])
    }

    /// Starts `hostscope run <args>` with extra environment variables and
    /// waits until the syscalls signal is attached.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Agent {
        require_root();
        // The HTTP listener always runs: on a free port unless the test
        // picks one, so agents never collide on the default 9464.
        let listen: &[&str] = if args
            .iter()
            .any(|a| *a == "--listen" || *a == "--prometheus-listen")
        {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(hostscope_bin())
            .arg("run")
            .args(args)
            .args(listen)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hostscope");
        let stderr = Lines::default();
        stderr.spawn_reader(child.stderr.take().unwrap());
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("agent printed a line that is not JSON ({e}): {line}")
                });
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let agent = Agent {
            child: Some(child),
            lines: rx,
            reader: Some(reader),
            stderr,
        };
        agent.stderr.wait_for(
            "syscalls signal attached",
            Duration::from_secs(60),
            "agent start",
        );
        agent
    }

    /// The next OTLP/JSON line (metrics or traces).
    pub fn next_line(&self, timeout: Duration) -> Value {
        match self.lines.recv_timeout(timeout) {
            Ok(v) => v,
            Err(RecvTimeoutError::Timeout) => panic!(
                "expected an OTLP/JSON line from the agent within {timeout:?}; agent log:\n{}",
                self.stderr.text()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                panic!("agent stdout closed; agent log:\n{}", self.stderr.text())
            }
        }
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Whether the agent process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal`, waits for a clean exit, returns every line not yet read.
    pub fn stop_with(mut self, signal: i32) -> Vec<Value> {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = wait_timeout(&mut child, Duration::from_secs(30)).unwrap_or_else(|| {
            let _ = child.kill();
            panic!(
                "agent did not exit within 30 s of signal {signal}; log:\n{}",
                self.stderr.text()
            )
        });
        assert!(
            status.success(),
            "agent should exit 0 after signal {signal}, got {status}; log:\n{}",
            self.stderr.text()
        );
        // The reader thread ends at EOF, once it has parsed the last line.
        if let Some(reader) = self.reader.take() {
            reader.join().expect("agent stdout reader panicked");
        }
        self.lines.try_iter().collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for a child up to `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// What `hostscope-workload mix` did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mix {
    pub getppid: u64,
    pub sleeps: u64,
    pub sleep_ms: u64,
    pub ebadf: u64,
    pub enoent: u64,
    /// Threads making `getppid` and `sched_yield` (0 or 1: the main thread).
    pub threads: u64,
    pub yields: u64,
}

/// A running `hostscope-workload mix`, waiting for `go`.
pub struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
    pub pid: u32,
    pub mix: Mix,
}

impl Workload {
    pub fn spawn(mix: Mix) -> Workload {
        let n = |v: u64| v.to_string();
        let mut child = Command::new(target_bin("hostscope-workload"))
            .args([
                "mix",
                "--getppid",
                &n(mix.getppid),
                "--sleeps",
                &n(mix.sleeps),
            ])
            .args(["--sleep-ms", &n(mix.sleep_ms), "--ebadf", &n(mix.ebadf)])
            .args([
                "--enoent",
                &n(mix.enoent),
                "--threads",
                &n(mix.threads.max(1)),
            ])
            .args(["--yields", &n(mix.yields)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn hostscope-workload");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read ready line");
        let pid: u32 = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("expected 'ready <pid>' from the workload, got {line:?}"));
        assert_eq!(pid, child.id());
        Workload {
            child,
            stdin,
            stdout,
            pid,
            mix,
        }
    }

    /// Lets the workload make its syscalls; returns each sleep's duration
    /// in ns as measured around the syscall by the workload.
    pub fn run(&mut self) -> Vec<u64> {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read result line");
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("workload result is not JSON ({e}): {line:?}"));
        v["sleep_ns"]
            .as_array()
            .expect("sleep_ns array")
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if wait_timeout(&mut self.child, Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A TCP port free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `GET path` over HTTP/1.0 at `addr` (`IP:PORT`): the status code and the
/// body, or why the request failed.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status line in {text:?}")))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}
