//! OOM kills: a child in a memory-limited cgroup allocates past the limit;
//! exactly one kill is reported, on that child, as the cgroup's own
//! `oom_kill` counter says.

use std::{
    io::Write,
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use hostscope_tests::{Agent, require_root, wait_timeout};

/// A memory cgroup with a 64 MiB limit: v1 (`memory` hierarchy) where the
/// host has one, else v2. Removed on drop.
struct MemCgroup {
    dir: PathBuf,
    v1: bool,
}

impl MemCgroup {
    fn new() -> MemCgroup {
        let name = format!("hostscope-oom-{}", std::process::id());
        let v1 = PathBuf::from("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists();
        let dir = if v1 {
            PathBuf::from("/sys/fs/cgroup/memory").join(&name)
        } else {
            let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
            PathBuf::from("/sys/fs/cgroup").join(&name)
        };
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let cg = MemCgroup { dir, v1 };
        let (file, limit) = if v1 {
            ("memory.limit_in_bytes", "67108864")
        } else {
            ("memory.max", "67108864")
        };
        std::fs::write(cg.dir.join(file), limit).expect("set the memory limit");
        if !v1 {
            let _ = std::fs::write(cg.dir.join("memory.swap.max"), "0");
        }
        cg
    }

    /// The cgroup's own count of OOM kills.
    fn oom_kills(&self) -> u64 {
        let file = if self.v1 {
            "memory.oom_control"
        } else {
            "memory.events"
        };
        let text = std::fs::read_to_string(self.dir.join(file)).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("oom_kill in {file}:\n{text}"))
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

#[test]
fn oom_kill_is_counted_once_on_the_victim() {
    require_root();
    let agent = Agent::start(&["--interval", "1", "--slow-threshold", "off"]);
    agent
        .stderr
        .wait_for("oom signal attached", Duration::from_secs(30), "oom signal");
    let cg = MemCgroup::new();
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys\nsys.stdin.readline()\nl = []\nfor _ in range(1024): l.append(b'x' * (1 << 20))\n",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("python3");
    let pid = child.id();
    std::fs::write(cg.dir.join("cgroup.procs"), pid.to_string()).expect("move into the cgroup");
    let v2_path = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .expect("a cgroup v2 path");
    writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(30)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the allocating child was not killed within 30 s")
    });
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "killed by the OOM killer: {status}"
    );
    assert_eq!(cg.oom_kills(), 1, "the cgroup counts exactly one OOM kill");

    std::thread::sleep(Duration::from_millis(1500));
    let lines = agent.stop_with(libc::SIGTERM);
    let mut seen = Vec::new();
    for line in &lines {
        for rm in line["resourceMetrics"].as_array().into_iter().flatten() {
            let attrs = &rm["resource"]["attributes"];
            let rpid = attrs
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["key"] == "process.pid")
                .and_then(|a| a["value"]["intValue"].as_str().map(str::to_string));
            for m in rm["scopeMetrics"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["metrics"].as_array().into_iter().flatten())
                .filter(|m| m["name"] == "hostscope.oom.kills")
            {
                for p in m["sum"]["dataPoints"].as_array().into_iter().flatten() {
                    let path = p["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["key"] == "hostscope.cgroup.path")
                        .and_then(|a| a["value"]["stringValue"].as_str().map(str::to_string));
                    let n: u64 = p["asInt"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    if let Some(rpid) = &rpid {
                        seen.push((rpid.clone(), path, n));
                    }
                }
            }
        }
    }
    let victims: Vec<&(String, Option<String>, u64)> =
        seen.iter().filter(|(_, _, n)| *n > 0).collect();
    assert_eq!(
        victims,
        vec![&(pid.to_string(), Some(v2_path.clone()), 1)],
        "exactly one kill, on pid {pid} in {v2_path}; all process points: {seen:?}"
    );
}
